"""Running a MOSIX process away from home: what its calls carry, and its home half (the deputy)."""

import signal

#: what a node's mosd signals a guest host with to have it send its guest home
#: (mosmigrate out, mosctl expel). SIGURG is ignored by default, so one that comes
#: before the guest host listens is lost, not fatal (mosd sends it again).
SEND_HOME = signal.SIGURG
