"""(being written)"""
class LSTM: pass
class LSTMCell: pass
