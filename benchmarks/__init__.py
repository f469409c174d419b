"""Speed and memory benchmarks of the hippo-scp node (issue #10).

Every number is a ratio against a baseline measured in the same run with alternating runs
(the machine is shared), or an absolute figure with its machine description. Run them all with
``python benchmarks/run_all.py [--quick]``; see ``docs/benchmarks.md``.
"""
