"""Top-k recommendations of a trained recommender: python predict.py ckpt_path=<run>/checkpoints/best.ckpt k=20"""

from mgrec.predict import main

if __name__ == "__main__":
    main()
