"""Train a recommender: python train.py [model=bm3] [optimizer=mg] [data=tiktok] [key=value ...]"""

from mgrec.train import main

if __name__ == "__main__":
    main()
