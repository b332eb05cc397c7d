"""Does nothing, forever (sleeping releases the GIL, so heartbeats go on)."""

import time

while True:
    time.sleep(1)
