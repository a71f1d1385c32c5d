"""aa_pkg: builds and publishes the apparmor-fullsystem Debian package."""

__version__ = "0.1.0"
