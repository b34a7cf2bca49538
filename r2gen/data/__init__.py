"""Data: report cleaning, annotation reading, image loading, the synthetic demo set and the DataModule."""
