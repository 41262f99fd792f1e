"""Where does a model look? Grad-CAM maps of a finished run, their share in the border band and the region of
interest, and the occlusion test behind the audit's shortcut check. Runs are read with xferlab.use.load_run; the report
draws its "Where the models look" section from the explain folders (xferlab.report.explain), never from here.

  cam.py       Grad-CAM (the `grad-cam` package) over a TransferModel, batch by batch
  regions.py   the border band, regions of interest (phantom lung fields, npy roi/ folders, a CSV `roi` column), shares
  figures.py   overlays and contact sheets
  run.py       `xferlab explain RUN [INPUT...] --out DIR`: maps, figures and explain.json (artifacts.write_explain)
  commands.py  the `xferlab explain` subcommand's arguments and command
  shortcut.py  occlusion of the most salient windows of the border band vs those of the region of interest, paired
               over images (a one-sided Wilcoxon signed-rank p-value)
  audit_check.py  the audit's shortcut check on a run (audit.shortcut_run)
"""
