"""Using a trained run folder: `wsml eval` (mAP on a split) and `wsml predict` (scores for new images)."""
