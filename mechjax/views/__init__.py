"""What a person looks at: figures and pages. Nothing here computes a result.

figures          shared matplotlib helpers (figure, colormap, PNG metadata)
training         figures of a training run (loss, ICL, head scores, PCA)
circuits         figures of circuits (patterns, eigenvalues, composition, paths)
html             the self-contained HTML page builder
run_report       a run's summary and report, and the comparison of runs
analysis_report  `mechjax analyze`: the circuits of one model as a report
"""
