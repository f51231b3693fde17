"""drcio experiments: run-experiment scenarios, workloads, backends, export and report."""
