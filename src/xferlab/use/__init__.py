"""Using a trained run: load it (load_run), predict new images (xferlab predict), export it (xferlab export).

Everything here reads run folders; nothing in training reads back from here.
"""
