"""semcorr: build semantic-correspondence datasets the way SPair-71k and MISC210K were built."""

__version__ = "0.1.0"
