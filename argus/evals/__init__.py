"""``argus eval <detector>``: detection quality against the generator's ground truth (one module each)."""
