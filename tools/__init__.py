"""Developer tools: `python -m tools.import_closure` prints what each DVC stage must list as deps."""
