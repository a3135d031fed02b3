"""Commands to engines, from issue to result.

``issuing`` checks and writes a batch (``params`` and ``rights`` say what may be asked and by
whom); ``desired_state`` keeps the state each engine should be in; ``delivery`` gets the commands
to the engines; ``lifecycle`` moves each command through Command.TRANSITIONS; ``resume`` is the
four-eyes release of a kill. ``errors`` holds what they refuse with.
"""
