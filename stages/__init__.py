"""Stage entry points: `python -m stages.<name> --params <file>` (see dvc.yaml and pretrain/dvc.yaml)."""
