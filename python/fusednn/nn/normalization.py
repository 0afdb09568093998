"""(being written)"""
class LayerNorm: pass
class RMSNorm: pass
