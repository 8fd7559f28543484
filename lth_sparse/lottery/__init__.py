"""The lottery wing: data, models, pruning, training, IMP rounds, the run store and reports.
It never imports the sparse wing; lth_sparse.bridge connects the two."""
