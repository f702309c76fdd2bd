"""k400ft: fine-tune and evaluate self-supervised video ViTs (CatMAE, VideoMAE) on Kinetics-400.

One module per workflow stage; the library knows nothing of Snakemake.
"""
