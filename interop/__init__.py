"""Conformance and interoperability runners: they use the installed relay as an outsider would."""
