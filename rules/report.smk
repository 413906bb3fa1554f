# (stage rules: report)
