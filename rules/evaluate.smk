# (stage rules: evaluate)
