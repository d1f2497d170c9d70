"""From run directories to the paper's tables and figures: collect, tables, statistics (the
inference under a table), clustering (of training curves), plots."""
