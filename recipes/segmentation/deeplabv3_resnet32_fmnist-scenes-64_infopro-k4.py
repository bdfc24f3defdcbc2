# InfoPro, K=4, on Fashion-MNIST scenes: the ResNet-32 trained as 4 gradient-isolated modules,
# modules 1-3 with InfoPro's per-pixel auxiliaries, module 4 feeding the ASPP + FCN heads.
_base_ = "./deeplabv3_resnet32_fmnist-scenes-64_e2e.py"

model = dict(method="infopro", num_modules=4, hilo=False, pff=1)
