"""Studies: quality over seeds, recipes, label suggestions and bad inputs, each writing a small summary."""
