"""Evaluate a trained recommender: python eval.py ckpt_path=<run>/checkpoints/best.ckpt"""

from mgrec.eval import main

if __name__ == "__main__":
    main()
