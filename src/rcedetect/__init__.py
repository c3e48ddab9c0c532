"""rcedetect: robust detection of adversarial examples with reverse cross-entropy.

Implements Pang, Du, Dong & Zhu, "Towards Robust Detection of Adversarial Examples"
(NeurIPS 2018): RCE training, thresholding detectors, the attacks of the paper and the
evaluation that regenerates its tables and figures.
"""

__version__ = "0.1.0"
