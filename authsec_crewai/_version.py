"""The package version, in a module of its own.

Low modules (the transports, the fetcher, the cassette writer) name the version
in user agents and files; importing it from here keeps them from importing the
package's front door, which would import them back.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.2.0"
