# text component sources
