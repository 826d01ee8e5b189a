"""Stand-in for ``launch`` (see ../README.md): only what ``launch/matcher.launch.py`` uses."""


class LaunchDescription:
    def __init__(self, entities=()):
        self.entities = list(entities)


class LaunchContext:
    """What substitutions read: the resolved launch arguments."""

    def __init__(self, launch_configurations):
        self.launch_configurations = dict(launch_configurations)
