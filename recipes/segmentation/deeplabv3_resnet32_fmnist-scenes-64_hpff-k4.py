# InfoPro + HPFF, K=4, on Fashion-MNIST scenes: InfoPro with HiLo cascades (size 2, weights
# 0.001 / 0.999) and PFF (auxiliaries on a 2x2 grid of feature patches).
_base_ = "./deeplabv3_resnet32_fmnist-scenes-64_e2e.py"

model = dict(method="infopro", num_modules=4, hilo=2, pff=2)
