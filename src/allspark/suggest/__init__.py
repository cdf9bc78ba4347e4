"""Suggestion, one room: which unlabeled images to label next (`allspark suggest`). An application above the
engine and prediction rooms. Re-exports nothing: importing the package must not load torch."""
