# InfoPro + HPFF, K=4: InfoPro with HiLo cascades (size 2, weights 0.001 / 0.999) and PFF
# (auxiliaries run on a 2x2 grid of feature patches, one patch at a time).
_base_ = "./deeplabv3_r101-d8_cityscapes-512x1024_40k_e2e.py"

model = dict(method="infopro", num_modules=4, hilo=2, pff=2)
