"""From run directories to the paper's tables and figures: collect, tables, plots."""
