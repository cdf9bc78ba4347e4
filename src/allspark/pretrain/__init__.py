"""`allspark pretrain`: an encoder trained on the user's own images by masked image modelling or by distillation
from a teacher encoder (METHODS.md 11)."""
