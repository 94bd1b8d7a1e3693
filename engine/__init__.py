"""Training and evaluation machinery shared by train_pixel.py, train_image.py and eval.py."""
