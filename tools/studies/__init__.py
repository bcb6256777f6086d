"""Studies on runs of the twin or of wgsl-diff: uncertainty_study, ause, grid_pair (and the
guidance_study.sh / score_study.sh drivers)."""
