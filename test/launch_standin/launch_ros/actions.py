"""Stand-in for ``launch_ros.actions``: a ``Node`` remembers how it was described."""


class Node:
    def __init__(self, *, package, executable, name=None, namespace=None, parameters=(), remappings=(), **other):
        self.package, self.executable, self.name, self.namespace = package, executable, name, namespace
        self.parameters, self.remappings, self.other = list(parameters), list(remappings), other
