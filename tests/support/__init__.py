"""
The test kit: everything test modules share (fakes, peers, configurations,
processes, waits); no test module imports another.
"""
