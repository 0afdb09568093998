"""(being written)"""
def layer_norm(*a, **k): raise NotImplementedError
def rms_norm(*a, **k): raise NotImplementedError
