# (stage rules: clip)
