"""The lifecycle policies, one concern per module, in the order lifecycle.py applies them.

Each policy is a function of a `Draft` (what is observed, the status being rewritten and the
decision being assembled) that writes its own part of the decision and returns True when it settles
this reconcile (no later policy runs). None of them does I/O: lifecycle.decide runs them in order
and the reconciler carries out the result. Like jobset's policies, each is tested on its own
(tests/unit/operator/test_policy_*.py).
"""
