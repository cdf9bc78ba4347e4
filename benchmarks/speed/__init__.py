"""Speed: time and memory of training, prediction and their parts."""
