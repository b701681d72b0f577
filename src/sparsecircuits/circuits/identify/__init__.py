"""Circuit identification from discrete SAE codes (O'Neill & Bui 2024) and what it is scored by.

* `task_pairs`: positive/negative prompt pairs of a task and its metric;
* `head_outputs`: per-head residual writes `z_h W_O^h`, averaged over positions;
* `discrete`: the small ReLU SAE shared by all heads, codes = argmax latent;
* `scores`: node and edge scores from codes;
* `ground_truth`: per-head activation patching, the thresholded ground truth, the canonical
  GPT-2 / attn-only-4l head sets;
* `baselines`: attribution patching and transcoder attributions per head;
* `metrics`: ROC-AUC, PR-AUC, precision / recall / F1 at the ground truth's size, O'Neill's
  specificity-based "F1", intervals over seeds;
* `readout`: final-position logits.

`sparsecircuits.pipelines.identify.run_identify` runs it all for one task.
"""
