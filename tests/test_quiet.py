"""``quiet_loggers`` raises loggers' levels inside a block and puts them back after it; it never lowers one."""

import logging

from bitnetcnn.quiet import quiet_loggers


def test_quiet_loggers_raises_levels_never_lowers_them_and_restores_them():
    loud, silenced = logging.getLogger("bitnetcnn.test.loud"), logging.getLogger("bitnetcnn.test.silenced")
    loud.setLevel(logging.DEBUG)
    silenced.setLevel(logging.CRITICAL)  # the user's choice: it printed WARNINGs again inside the block
    with quiet_loggers([loud.name, silenced.name], logging.WARNING):
        assert loud.level == logging.WARNING and silenced.level == logging.CRITICAL
    assert loud.level == logging.DEBUG and silenced.level == logging.CRITICAL
