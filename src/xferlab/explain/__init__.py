"""Where does a model look? Grad-CAM maps of a finished run, their share in the border band and the region of
interest, the occlusion test behind the audit's shortcut check, and the report section that shows them.

  cam.py       Grad-CAM (the `grad-cam` package) over a TransferModel, batch by batch
  regions.py   the border band, regions of interest (phantom lung fields, npy roi/ folders, a CSV `roi` column), shares
  model.py     a run folder's model.pt and data, loaded back (weights-only)
  figures.py   overlays and contact sheets
  run.py       `xferlab explain RUN [INPUT...] --out DIR`: maps, figures and explain.json
  shortcut.py  occlusion of the most salient region vs a random one of the same area, with a p-value
  section.py   the report's "Where the models look" section, from explain.json files only
"""
