"""Captioned image splits: easy-vqa captions for mini scale, readers for the paper's datasets
(COCO, Karpathy splits, img2dataset webdataset / parquet), split records on disk and COCO
results files."""
