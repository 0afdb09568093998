"""Full models built on fusednn layers, one flat file each."""
