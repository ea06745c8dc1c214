"""Models trained on image embeddings downstream of alignment: the ClipCap captioner and the
captioner variants (which images, through which encoder)."""
