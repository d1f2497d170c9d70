pytest_plugins = ["tests.slurm_cluster"]
