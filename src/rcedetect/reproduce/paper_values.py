"""The numbers of Pang et al. 2018 (NeurIPS), transcribed from the paper and its appendix, for the
side-by-side tables of the report. Nothing here is ever written into a cell: cells hold only what
this package measured.

Units as printed: test errors in %, AUC-scores in 10^-2 (i.e. percent), distortions on the 0-255
scale, ratios in %, times in seconds per adversarial example (P100 GPU, averaged over MNIST and
CIFAR-10, full attack budgets).
"""

# Table 1: classification error rates (%) on the test sets.
TABLE1 = {
    ("mnist", 32, "ce"): 0.38, ("mnist", 32, "rce"): 0.29,
    ("mnist", 56, "ce"): 0.36, ("mnist", 56, "rce"): 0.32,
    ("cifar10", 32, "ce"): 7.13, ("cifar10", 32, "rce"): 7.02,
    ("cifar10", 56, "ce"): 6.49, ("cifar10", 56, "rce"): 6.60,
}

# Table 2: (distortion, AUC confidence, AUC non-ME, AUC K-density) per dataset, attack, objective.
TABLE2 = {
    "mnist": {
        ("fgsm", "ce"): (26.92, 79.7, 66.8, 98.8), ("fgsm", "rce"): (26.63, 98.8, 98.6, 99.4),
        ("bim", "ce"): (6.80, 88.9, 70.5, 90.0), ("bim", "rce"): (7.15, 91.7, 90.6, 91.8),
        ("ilcm", "ce"): (6.57, 98.4, 50.4, 96.2), ("ilcm", "rce"): (6.60, 100.0, 97.0, 98.6),
        ("jsma", "ce"): (12.1, 98.6, 60.1, 97.7), ("jsma", "rce"): (12.87, 100.0, 99.4, 99.0),
        ("cw", "ce"): (8.63, 98.6, 64.1, 99.4), ("cw", "rce"): (11.04, 100.0, 99.5, 99.8),
        ("cw-hc", "ce"): (13.70, 0.0, 40.0, 91.1), ("cw-hc", "rce"): (23.20, 0.1, 93.4, 99.6),
        ("average", "ce"): (12.45, 77.4, 58.7, 95.5), ("average", "rce"): (14.57, 81.8, 96.4, 98.0),
    },
    "cifar10": {
        ("fgsm", "ce"): (29.80, 71.5, 66.9, 99.7), ("fgsm", "rce"): (29.81, 92.6, 91.4, 98.0),
        ("bim", "ce"): (6.29, 0.0, 64.6, 100.0), ("bim", "rce"): (5.46, 0.7, 70.2, 100.0),
        ("ilcm", "ce"): (2.51, 16.4, 37.1, 84.2), ("ilcm", "rce"): (2.06, 64.1, 77.8, 93.9),
        ("jsma", "ce"): (1.53, 99.2, 27.3, 85.8), ("jsma", "rce"): (1.40, 99.5, 91.9, 95.4),
        ("cw", "ce"): (0.65, 99.5, 50.2, 95.3), ("cw", "rce"): (0.77, 99.6, 94.7, 98.2),
        ("cw-hc", "ce"): (0.93, 0.0, 28.8, 75.4), ("cw-hc", "rce"): (1.81, 0.2, 53.6, 91.8),
        ("average", "ce"): (6.95, 47.8, 45.8, 90.1), ("average", "rce"): (6.89, 59.5, 80.0, 96.2),
    },
}

# Table 3 (C&W-wb, kappa = 0): (ratio (%) of f2(x*) > 0, distortion), ResNet-32, K-density.
TABLE3 = {
    ("mnist", "ce"): (1, 17.12), ("mnist", "rce"): (77, 31.59),
    ("cifar10", "ce"): (0, 1.26), ("cifar10", "rce"): (12, 3.89),
}

# Appendix Table 2 (C&W-wb-hc, kappa = 5): ratio (%) of f2(x*) > 0; no distortion printed.
APPENDIX_TABLE2 = {
    ("mnist", "ce"): 100, ("mnist", "rce"): 100,
    ("cifar10", "ce"): 100, ("cifar10", "rce"): 100,
}

# Table 4: AUC-scores (10^-2) on CIFAR-10, (target ResNet-56, substitute ResNet-32). On MNIST the
# paper only says all four are higher than 95 (a bound, not a number). Transfer: "less than 50 %"
# (MNIST) and "less than 15 %" (CIFAR-10) of the C&W-wb examples make the target misclassify.
TABLE4 = {
    "cifar10": {("ce", "ce"): 75.0, ("ce", "rce"): 90.8, ("rce", "ce"): 89.1, ("rce", "rce"): 84.9},
}
TABLE4_MNIST_LOWER_BOUND = 95.0
TABLE4_TRANSFER_UPPER_BOUND = {"mnist": 50.0, "cifar10": 15.0}

# Appendix Table 1: average seconds per adversarial example (ResNet-32, P100, 9 x 10 000 C&W budget,
# JSMA <= 100 pixels), averaged between MNIST and CIFAR-10.
APPENDIX_TABLE1 = {
    ("fgsm", "ce"): 1.9e-3, ("fgsm", "rce"): 2.4e-3,
    ("bim", "ce"): 3.3e-3, ("bim", "rce"): 3.6e-3,
    ("ilcm", "ce"): 4.1e-3, ("ilcm", "rce"): 4.3e-3,
    ("jsma", "ce"): 2.9e1, ("jsma", "rce"): 2.0e1,
    ("cw", "ce"): 4.5e1, ("cw", "rce"): 5.5e1,
    ("cw-hc", "ce"): 6.5e1, ("cw-hc", "rce"): 1.1e2,
    ("cw-wb", "ce"): 7.0e2, ("cw-wb", "rce"): 1.3e3,
}

# Appendix B.3: the RAND noise amplitude of appendix Figure 1 (CIFAR-10).
APPENDIX_RAND_EPS = 0.04

# What the figures show, in words (their values are only drawn, not printed, in the paper).
FIGURE_CLAIMS = {
    "figure1": "t-SNE of the final hidden features of 1 000 CIFAR-10 test images: \"the networks trained "
               "by the RCE can successfully map the test examples to the neighborhood of low-dimensional "
               "manifolds in the final-layer hidden space\" (section 4.2).",
    "figure3": "\"Resnet-32 (RCE) has higher accuracy than Resnet-32 (CE) under all the four attacks on "
               "both datasets\" (section 4.3).",
    "figure4": "C&W-wb examples against ResNet-32 (CE) \"are indistinguishable from the normal examples by "
               "human eyes\"; those against ResNet-32 (RCE) \"have macroscopic noises\" (section 4.4).",
    "appendix_figure1": "On CIFAR-10 with eps = 0.04, \"the networks trained by both the CE and RCE are "
                        "robust to noisy examples in the sense of having low error rates\" (appendix B.3).",
    "appendix_figures2_3": "K-density on 1 000 CIFAR-10 test images: with CE, normal and noisy inputs have "
                           "quite different distributions and noisy inputs cannot be told from JSMA / "
                           "C&W-hc examples; with RCE, normal and noisy inputs are similar and separated "
                           "from the adversarial ones (appendix B.3).",
    "appendix_figure4": "Accuracy under C&W with fixed values of c instead of the binary search "
                        "(ResNet-32, CIFAR-10; appendix B.5). The paper prints no numbers.",
}
