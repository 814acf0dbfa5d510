"""A system bus of a test's own (dbus-daemon --config-file): firewalld's and resolved's tests
each start one, so that nothing of the host's bus is touched."""


def bus_config(socket_path: str, user: str = "root") -> str:
    """dbus-daemon's configuration: a system bus listening on socket_path, open to `user`."""
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket_path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="{user}"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""
