# InfoPro, K=4: the backbone trained as 4 gradient-isolated modules, modules 1-3 with InfoPro's
# per-pixel auxiliaries (reconstruction + classification), module 4 feeding ASPP + FCN heads.
_base_ = "./deeplabv3_r101-d8_cityscapes-512x1024_40k_e2e.py"

model = dict(method="infopro", num_modules=4, hilo=False, pff=1)
